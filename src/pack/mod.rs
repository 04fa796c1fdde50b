//! Exec slot allocator (placeholder, being written).
