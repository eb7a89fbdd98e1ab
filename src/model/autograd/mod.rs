//! Autograd glue for values computed outside candle's graph: `attach` (a value with a hand-written
//! backward) and `grad_carrier` (the adapter gradients a fused block computes itself, handed to candle).

pub mod attach;
pub mod grad_carrier;
