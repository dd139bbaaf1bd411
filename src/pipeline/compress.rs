//! Frame-parallel zstd compression (ordered output, bounded workers) and gzip.
