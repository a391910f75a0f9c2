//! Address arithmetic and pool ranges of a network.
