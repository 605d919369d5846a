"""The money controls every billable call passes: pricing, quotes, approvals, spend caps and
holds, the execution flow, receipts and the ledger, reconciliation and the crash sweep."""
