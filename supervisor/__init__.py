"""The prefork parent of `report-worker run`: keeps N consumer children alive, heartbeat-checked."""
