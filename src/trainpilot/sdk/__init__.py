"""The training side: `Run` (sdk/run.py) queues what `log()` is given; the sender batches it off the
training thread, the transport posts it, the spool keeps what could not be sent, and the control
stream brings commands back. `trainpilot.init` is the way in."""
