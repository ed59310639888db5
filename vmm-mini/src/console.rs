//! The `--console stdio|file=PATH` option: where the serial port's output goes, and stdin as
//! its input.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::devices::Devices;
use crate::vcpu::lock;

/// Where the guest's console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file, no input.
    File(PathBuf),
}

impl FromStr for Console {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(Console::Stdio),
            _ => match s.strip_prefix("file=") {
                Some(path) if !path.is_empty() => Ok(Console::File(path.into())),
                _ => Err(format!("console '{s}': expected stdio or file=PATH")),
            },
        }
    }
}

impl Console {
    /// The writer the serial port's output goes to.
    pub fn writer(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Console::Stdio => Box::new(io::stdout()),
            Console::File(path) => Box::new(File::options().create(true).append(true).open(path)?),
        })
    }

    /// For stdio, starts a thread feeding stdin into the serial port's receive FIFO. It ends
    /// at EOF; it is not joined (a blocked read of stdin ends with the process).
    pub fn start_input(&self, devices: Arc<Mutex<Devices>>) -> io::Result<()> {
        if *self != Console::Stdio {
            return Ok(());
        }
        std::thread::Builder::new().name("console-in".into()).spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = io::stdin();
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    // The FIFO takes what fits; retry the rest once the guest drained it.
                    let taken = lock(&devices).serial.enqueue_raw_bytes(rest).unwrap_or(0);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs_parse() {
        assert_eq!("stdio".parse::<Console>(), Ok(Console::Stdio));
        assert_eq!("file=/tmp/c.log".parse::<Console>(), Ok(Console::File("/tmp/c.log".into())));
        assert!("file=".parse::<Console>().is_err());
        assert!("tty".parse::<Console>().is_err());
    }
}
