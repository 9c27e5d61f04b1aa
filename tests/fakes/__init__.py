"""Fakes of services that cannot run here, each following its service's documented wire format."""
