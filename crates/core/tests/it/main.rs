//! Scripted hostile-peer integration tests of skiff-core: one binary, topic modules.

mod hostile;
mod integrity;
mod lan;
mod paired;
mod reverse;
mod turn_tcp;
mod util;
mod webrtc;
