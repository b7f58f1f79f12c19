"""Server-Sent Events: the wire format, the subscriber, and the two ways a stream is served."""
