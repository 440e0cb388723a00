"""Webhook notifications for rollbacks, holds and escalations (the `notifier` role)."""
