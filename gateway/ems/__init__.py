"""Home energy management: appliances, forecasts, schedule, demand response, trading agent."""
