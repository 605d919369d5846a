"""Stripe billing (DESIGN §11): a customer per tenant, Checkout for plans, Stripe's webhooks
(plan, spend cap, suspension), metered usage sent as Billing Meter events, and Stripe's side
of the reconciliation."""
