"""Business flows: each turns one business event into a list of transfers and submits it.

Tips (fee split), purchases (Stripe top-ups, refunds, disputes, debts), payouts (two-phase holds),
grants (admin adjustments). The engine core (`engine`, `batch`, `store`, `sweeper`) never imports
these; they import it.
"""
