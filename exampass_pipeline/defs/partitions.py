"""The daily partitions of monitoring: one UTC day of the prediction log each.

Part of the asset definitions, which Dagster loads at import, so the first day (EXAMPASS_PARTITIONS_START) is
read then.
"""

import dagster as dg

from exampass_pipeline.contract.settings import Settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=Settings.from_env().partitions_start.isoformat())
