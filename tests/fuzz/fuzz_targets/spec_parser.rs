//! Disk spec parser: any input either parses or is refused with an error, never a panic; what
//! parses prints back to an equal spec, and every typed getter and `finish` accept any value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_blk::spec::Spec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = Spec::parse(text) else { return };
    let printed = spec.to_string();
    assert_eq!(Spec::parse(&printed).as_ref(), Ok(&spec), "Display must round-trip");
    let keys: Vec<String> = spec.keys().map(str::to_string).collect();
    for (i, key) in keys.iter().enumerate() {
        let mut s = spec.clone();
        let _ = match i % 4 {
            0 => s.take_bool(key).map(|_| ()),
            1 => s.take_size(key).map(|_| ()),
            2 => s.take_u32(key).map(|_| ()),
            _ => s.take_required(key, "hint").map(|_| ()),
        };
        assert!(s.get(key).is_none(), "a getter takes its key even when the value is bad");
        let _ = s.finish(&["format", "path"]).map_err(|e| e.to_string());
    }
    let _ = vhost_user_blk::stack::find_format(spec.get("format").unwrap_or(""));
});
