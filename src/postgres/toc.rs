//! postgres: toc
