//! Scripted hostile-peer integration tests of skiff-core: one binary, topic modules.

mod hostile;
mod integrity;
mod lan;
mod reverse;
mod util;
mod webrtc;
