//! The read direction: ranged or streamed fetch, age decryption, hash check, decompression.
