"""Cache warming: the hot set filled after a cold or changed Redis."""

from ordercache.warming.warmer import CacheWarmer, WarmConfig, Warming, WarmMetrics, WarmProgress

__all__ = ["CacheWarmer", "WarmConfig", "WarmMetrics", "WarmProgress", "Warming"]
