"""The ledger behind `balance` and `transfer`: integer balances owned by one episode."""
from __future__ import annotations

MAX_AMOUNT = 10**9


class LedgerError(ValueError):
  pass


class Ledger:

  def __init__(self, balances: dict[str, int] | None = None):
    self._balances = dict(balances or {})

  def snapshot(self) -> dict[str, int]:
    return dict(self._balances)

  def _account(self, name: str) -> str:
    for key in self._balances:
      if key.casefold() == name.strip().casefold():
        return key
    raise LedgerError(f"unknown account '{name}'")

  def balance(self, account: str) -> int:
    return self._balances[self._account(account)]

  def transfer(self, src: str, dst: str, amount: int) -> dict[str, int]:
    a, b = self._account(src), self._account(dst)
    if a == b:
      raise LedgerError("from and to are the same account")
    if not 0 < amount <= MAX_AMOUNT:
      raise LedgerError(f"amount must be between 1 and {MAX_AMOUNT}")
    if self._balances[a] < amount:
      raise LedgerError(f"insufficient funds: {a} has {self._balances[a]}")
    self._balances[a] -= amount
    self._balances[b] += amount
    return {a: self._balances[a], b: self._balances[b]}
