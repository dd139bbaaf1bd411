//! The daemon: loads the catalogue, opens the state DB, reconciles with the repositories, binds
//! the socket, runs the scheduler loop and the run executor, and talks to systemd.
