//! The plan: the runs a config asks for, each with a stable RunId (readable slug + hash of resolved settings).
