//! age encryption to recipients on a blocking thread, feeding the store writer.
