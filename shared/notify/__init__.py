"""Notifications: what the gate tells other systems (signed webhooks, Slack), delivered by the
workers with the same retries, dead letters and replay as inbound events.

    standard_webhooks  sign and verify per the Standard Webhooks specification
    messages           the JSON body of a notice, and its Slack message (pure)
    links              links to MLflow (and to the console) for a model version
    delivery           one queued delivery: its payload and its stable id
    outbox             a Notify: one delivery per sink that wants the notice, published
    sinks              sinks by key, their URLs and secrets from the environment, checked at start
    send               one HTTP attempt, its failure classified as transient or permanent
    errors             SinkUnavailable (retry), SinkRefused and SinkNotConfigured (dead-letter)

Nothing is imported here, so that shared.queue can import `delivery` without a cycle.
"""
