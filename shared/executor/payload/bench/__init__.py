"""Benchmarks of execution models on Ray for the standing executor (issue 11).

baseline (the original's model, reusable by any later benchmark), standing (plain async
actors and the Ray Serve deployment), execution_models (the driver: `python -m bench`).
Not part of the payload the gateway ships: shared/ray embeds only ray_executor_payload/.
"""
