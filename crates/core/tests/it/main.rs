//! Scripted hostile-peer integration tests of skiff-core: one binary, topic modules.

mod hostile;
mod integrity;
mod paired;
mod reverse;
mod util;
mod webrtc;
