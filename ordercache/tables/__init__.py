"""ordercache."""
