"""Local tools: the development PKI and Quay's sample notification (flask dev-certs, send-sample, the tests)."""
