"""The training side: `Run` (run.py) queues what `log()` is given; the sender batches it off the
training thread, the transport posts it, the spool keeps what could not be sent (orphans.py sends
what dead processes left), and the control stream brings commands back (control.py; across torchrun
ranks, distributed.py). embedded.py runs the server in this process, the SDK's one reach into
server/. `trainpilot.init` is the way in."""
