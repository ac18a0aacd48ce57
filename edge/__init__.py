"""The Switchboard edge: terminates WebSockets and bridges them to NATS."""
