"""Clients of a running gpt2-serve: Server-Sent Events parsing, a server in a child process."""
