//! (in progress)
pub mod gazetteer;
