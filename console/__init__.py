"""The gate's web console: decisions, models, reviews, dead letters and policy, for operators and
reviewers, signed in as themselves (`mlflow-gate console`). Its own process: the receiver's hot
path stays lean."""
