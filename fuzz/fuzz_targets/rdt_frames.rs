//! Frame decoding of an opened packet body: any bytes must decode to frames or an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for frame in left::rdt::frame::Decoder::new(data) {
        if frame.is_err() {
            break;
        }
    }
});
