"""Pure renderers: profile → text, tables and figures."""
