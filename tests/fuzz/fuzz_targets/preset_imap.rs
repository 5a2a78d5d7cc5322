#![no_main]
use portwatch_agent::check::TcpPreset;
libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch_fuzz::preset(TcpPreset::Imap, data));
