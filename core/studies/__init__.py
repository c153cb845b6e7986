"""Studies: settings × seeds as ordinary child jobs, compared as one."""
