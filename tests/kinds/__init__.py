"""Job kinds that exist only for tests, registered through ``GRADLAB_EXTRA_KINDS`` by the tests that need them."""
