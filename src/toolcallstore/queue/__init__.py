"""The persistent job queue (DESIGN §6): one `jobs` table, one `JobStore` interface."""
