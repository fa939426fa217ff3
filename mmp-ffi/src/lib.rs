//! libmmp: the C ABI over mmp-core (in progress).
