//! A real nats-server for the tests.
