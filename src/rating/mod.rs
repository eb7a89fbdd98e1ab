//! Ratings: rubric, blind pairing, the append-only journal, agreement, the results table, exports, study import.
