"""The default table that turns a settlement reason code into a cause (CONTRACT §3).

Settlement results carry the acquirer's or the bank's `reason_code`. Which code means which
cause differs from acquirer to acquirer, so the table is configuration; this module is the
default the collector starts from and the acquirer simulator draws its codes from.

Two families of codes are covered:

- **ISO 20022 return and status reasons** (`ExternalReturnReason1Code`,
  `ExternalStatusReason1Code`), which banks put on a rejected or returned credit transfer:
  `AC01`, `AC04`, `AC06`, `BE01`, ... Codes about the debtor's side or insufficient funds
  (`AM04`, ...) do not occur on a merchant's credit and are left out.
- **posmon's acquirer namespace**, one letter for the family and three digits, for what
  acquirers report in their own words: `M1xx` merchant status, `A5xx` settlement account,
  `B2xx` bank side, `O3xx` operator, `N4xx` network. An acquirer with other codes maps them
  in configuration.

A lookup is case-insensitive and ignores surrounding blanks; an unknown code is UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from posmon.wire.models import Cause


class Remedy(StrEnum):
    """What has to happen before a re-remittance (补划款) can succeed."""

    RETRY = "RETRY"  # nothing: send it again once the condition has passed (bank back up)
    FIX_ACCOUNT = "FIX_ACCOUNT"  # correct the settlement account details first
    MERCHANT_ACTION = "MERCHANT_ACTION"  # the merchant's status must be restored first
    FIX_TRANSACTION = "FIX_TRANSACTION"  # the transaction itself must be put right (upload, batch)
    INVESTIGATE = "INVESTIGATE"  # find out what happened first


@dataclass(frozen=True, slots=True)
class ReasonCode:
    """One reason code: the cause it stands for, a text for people, and what fixes it."""

    code: str
    cause: Cause
    text: str
    remedy: Remedy

    @property
    def retryable(self) -> bool:
        """True when re-remitting unchanged can succeed once the condition has passed."""
        return self.remedy is Remedy.RETRY


def _table(*codes: ReasonCode) -> dict[str, ReasonCode]:
    return {reason.code: reason for reason in codes}


_A, _M, _B, _O, _N, _U = (
    Cause.ACCOUNT_INFO,
    Cause.MERCHANT_QUALIFICATION,
    Cause.BANK_SYSTEM,
    Cause.OPERATOR,
    Cause.NETWORK,
    Cause.UNKNOWN,
)

DEFAULT_REASON_CODES: dict[str, ReasonCode] = _table(
    # --- ISO 20022 return / status reasons --------------------------------------------
    ReasonCode("AC01", _A, "收款账号错误 (incorrect account number)", Remedy.FIX_ACCOUNT),
    ReasonCode("AC03", _A, "收款账号无效 (invalid creditor account)", Remedy.FIX_ACCOUNT),
    ReasonCode("AC04", _A, "收款账户已销户 (account closed)", Remedy.FIX_ACCOUNT),
    ReasonCode("AC06", _A, "收款账户已冻结 (account blocked)", Remedy.FIX_ACCOUNT),
    ReasonCode("AC14", _A, "收款账户类型不符 (invalid creditor account type)", Remedy.FIX_ACCOUNT),
    ReasonCode(
        "AG01", _A, "该账户禁止此类交易 (transaction forbidden on account)", Remedy.FIX_ACCOUNT
    ),
    ReasonCode("BE01", _A, "户名与账号不符 (name inconsistent with account)", Remedy.FIX_ACCOUNT),
    ReasonCode("RC01", _A, "收款行行号错误 (bank identifier incorrect)", Remedy.FIX_ACCOUNT),
    ReasonCode("CNOR", _A, "收款行未登记 (creditor bank not registered)", Remedy.FIX_ACCOUNT),
    ReasonCode(
        "RR03", _A, "收款人名称或地址缺失 (creditor name or address missing)", Remedy.FIX_ACCOUNT
    ),
    ReasonCode("RR04", _M, "监管原因 (regulatory reason)", Remedy.MERCHANT_ACTION),
    ReasonCode("TM01", _B, "超过清算截止时间 (after the cut-off time)", Remedy.RETRY),
    ReasonCode("ED05", _B, "清算失败 (settlement failed at the clearing system)", Remedy.RETRY),
    ReasonCode("FF01", _B, "文件格式错误 (invalid file format)", Remedy.INVESTIGATE),
    ReasonCode(
        "MS02", _U, "客户原因未说明 (not specified, customer generated)", Remedy.INVESTIGATE
    ),
    ReasonCode("MS03", _U, "原因未说明 (not specified, agent generated)", Remedy.INVESTIGATE),
    ReasonCode("NARR", _U, "见附言 (reason given in narrative)", Remedy.INVESTIGATE),
    # --- posmon acquirer namespace: M1xx merchant status ------------------------------
    ReasonCode("M101", _M, "商户证照已过期 (merchant licence expired)", Remedy.MERCHANT_ACTION),
    ReasonCode("M102", _M, "商户已冻结 (merchant frozen)", Remedy.MERCHANT_ACTION),
    ReasonCode("M103", _M, "风控延迟结算 (risk hold)", Remedy.MERCHANT_ACTION),
    ReasonCode("M104", _M, "商户已解约 (merchant contract terminated)", Remedy.MERCHANT_ACTION),
    ReasonCode(
        "M105", _M, "商户资质待审核 (merchant qualification under review)", Remedy.MERCHANT_ACTION
    ),
    # --- A5xx settlement account ------------------------------------------------------
    ReasonCode("A501", _A, "结算账户未验证 (settlement account not verified)", Remedy.FIX_ACCOUNT),
    ReasonCode(
        "A502", _A, "结算账户信息变更中 (settlement account being changed)", Remedy.FIX_ACCOUNT
    ),
    # --- B2xx bank side ---------------------------------------------------------------
    ReasonCode("B201", _B, "银行系统维护 (bank system maintenance)", Remedy.RETRY),
    ReasonCode("B202", _B, "银行处理超时 (bank timeout)", Remedy.RETRY),
    ReasonCode("B203", _B, "银行拒绝: 系统错误 (bank rejected: system error)", Remedy.RETRY),
    ReasonCode("B204", _B, "银行通道不可用 (bank channel unavailable)", Remedy.RETRY),
    # --- O3xx operator ----------------------------------------------------------------
    ReasonCode("O301", _O, "终端未结算批次 (batch not closed)", Remedy.FIX_TRANSACTION),
    ReasonCode("O302", _O, "金额不符/录入错误 (amount mismatch, keyed wrong)", Remedy.INVESTIGATE),
    ReasonCode("O303", _O, "撤销/冲正处理错误 (void or reversal mishandled)", Remedy.INVESTIGATE),
    # --- N4xx network -----------------------------------------------------------------
    ReasonCode(
        "N401", _N, "交易未上送 (transaction not uploaded, stuck in SAF)", Remedy.FIX_TRANSACTION
    ),
    ReasonCode(
        "N402", _N, "主机未收到交易 (transaction never reached the host)", Remedy.FIX_TRANSACTION
    ),
)


def normalise(code: str) -> str:
    """A code as the tables key it: upper case, no surrounding blanks."""
    return code.strip().upper()


def lookup(code: str | None, table: Mapping[str, ReasonCode] | None = None) -> ReasonCode | None:
    """The entry for `code` in `table` (default: DEFAULT_REASON_CODES), or None."""
    if code is None:
        return None
    return (DEFAULT_REASON_CODES if table is None else table).get(normalise(code))


def cause_for(code: str | None, table: Mapping[str, ReasonCode] | None = None) -> Cause:
    """The cause `code` stands for in `table` (default: DEFAULT_REASON_CODES); UNKNOWN if absent."""
    reason = lookup(code, table)
    return Cause.UNKNOWN if reason is None else reason.cause


def codes_for(cause: Cause, table: Mapping[str, ReasonCode] | None = None) -> tuple[str, ...]:
    """Every code in `table` that stands for `cause`, in table order."""
    entries = DEFAULT_REASON_CODES if table is None else table
    return tuple(code for code, reason in entries.items() if reason.cause is cause)


def remedy_for(code: str | None, table: Mapping[str, ReasonCode] | None = None) -> str | None:
    """What must happen before a re-remittance can succeed, by reason code (None: unknown)."""
    reason = lookup(code, table)
    return None if reason is None else reason.remedy.value
