"""genmedia.loadtests."""
