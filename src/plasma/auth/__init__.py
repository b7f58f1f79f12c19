"""Access control: JWT verification and the per-type policy; off unless a key is configured.

``keys`` loads what verifies signatures (an HMAC secret, a PEM public key or a JWKS file),
``tokens`` verifies a token once and caches the result until it expires, ``policy`` decides
which event types a token may read or publish, ``credentials`` finds the token in a request
and keeps it out of logs, and ``Authorizer`` is what the transports call. Everything here runs
once per connection or request, never per delivery.
"""
