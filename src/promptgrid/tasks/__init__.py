"""The Prefect tasks the flows call, one per stage a run goes through (model resolution, output repair,
planning, predicting a shard, the report), so Prefect's UI shows each; the work itself is the library's."""
