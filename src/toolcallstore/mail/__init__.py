"""Mail on Stalwart (issue 16): the `MailProvider` Protocol (`base.py`), its Stalwart JMAP
adapter (`stalwart.py`), the records a mail domain publishes (`records.py`), and the tools
`email.domain.setup` and `email.mailbox.create` with their store (`tools.py`, `store.py`)."""
