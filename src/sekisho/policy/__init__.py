"""The sovereignty policy: which endpoints may see a request, and what is done to it first."""
