"""Outbound webhooks (DESIGN §5.7): endpoints, signing, the dispatcher that turns events into
deliveries, and the job that delivers each one at least once."""
