//! qcow2 images over files (emulation). Arrives with the qcow2 issue.
