//! The gRPC face of payment-service. The authorization layer admits only order-service to
//! Charge and Refund and only forwarded users (or operators) to wallet reads; this file
//! decides whose wallet a call is about, validates input and maps declines to clear statuses.

use ordermesh_contracts::payment::payment_service_server::{PaymentService, PaymentServiceServer};
use ordermesh_contracts::payment::{
    Balance, ChargeRequest, DepositRequest, GetBalanceRequest, GetPaymentRequest, GetWalletRequest,
    ListTransactionsRequest, ListTransactionsResponse, Payment, RefundRequest, Transaction,
    TransactionKind, Wallet,
};
use ordermesh_platform::money::{self, check_positive, money};
use ordermesh_platform::status::Violations;
use ordermesh_platform::store::Cursor;
use ordermesh_platform::user_context::UserContext;
use tonic::{Request, Response, Status};

use crate::ledger;
use crate::wallets::{Movement, Wallets};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub struct PaymentServer {
    wallets: Wallets,
}

impl PaymentServer {
    pub fn new(wallets: Wallets) -> Self {
        Self { wallets }
    }
    pub fn into_service(self) -> PaymentServiceServer<Self> {
        PaymentServiceServer::new(self)
    }
}

fn check_id(v: &mut Violations, field: &str, id: &str) {
    if id.is_empty() || id.len() > 64 || id.contains(['/', '\0', '#']) {
        v.add(field, "is not a valid id");
    }
}

/// The wallet owner a read is about: the signed-in user, or (admins, internal callers and
/// operators) the named user.
fn wallet_owner<T>(req: &Request<T>, named: &str) -> Result<String, Status> {
    match UserContext::from_request(req)? {
        Some(u) if named.is_empty() || named == u.user_id => Ok(u.user_id),
        Some(u) if u.is_admin() => Ok(named.to_string()),
        Some(_) => Err(Status::not_found("wallet not found")),
        None if !named.is_empty() => Ok(named.to_string()),
        None => Err(Status::invalid_argument(
            "user_id is required without a signed-in user",
        )),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentServer {
    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<Transaction>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let amount = check_positive(&mut v, "amount", req.amount.as_ref());
        v.into_result()?;
        let Some((currency, minor)) = amount else {
            return Err(Status::invalid_argument("amount"));
        };
        let record = self
            .wallets
            .apply(Movement {
                kind: TransactionKind::Deposit,
                fingerprint: ledger::fingerprint(&[
                    "deposit",
                    &user.user_id,
                    &currency,
                    &minor.to_string(),
                ]),
                user_id: user.user_id.clone(),
                currency,
                delta: minor,
                order: String::new(),
                scope: user.user_id,
                idempotency_key: req.idempotency_key,
                refund_of: None,
            })
            .await?;
        record
            .transaction
            .map(Response::new)
            .ok_or_else(|| Status::data_loss("movement without transaction"))
    }

    async fn get_wallet(
        &self,
        request: Request<GetWalletRequest>,
    ) -> Result<Response<Wallet>, Status> {
        let owner = wallet_owner(&request, &request.get_ref().user_id)?;
        let balances = self.wallets.balances(&owner).await?;
        let update_time = balances
            .iter()
            .filter_map(|b| b.update_time)
            .max_by_key(|t| (t.seconds, t.nanos));
        Ok(Response::new(Wallet {
            user_id: owner,
            balances: balances
                .iter()
                .map(|b| money(&b.currency, b.amount_minor))
                .collect(),
            update_time,
        }))
    }

    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<Balance>, Status> {
        let owner = wallet_owner(&request, &request.get_ref().user_id)?;
        let currency = request.get_ref().currency.as_str();
        let mut v = Violations::new();
        money::check_currency(&mut v, "currency", currency);
        v.into_result()?;
        let amount = self
            .wallets
            .balances(&owner)
            .await?
            .iter()
            .find(|b| b.currency == currency)
            .map_or(0, |b| b.amount_minor);
        Ok(Response::new(Balance {
            balance: Some(money(currency, amount)),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        let owner = wallet_owner(&request, "")?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if !req.currency.is_empty() {
            money::check_currency(&mut v, "currency", &req.currency);
        }
        let cursor = Cursor::from_page_token(&req.page_token).unwrap_or_else(|_| {
            v.add("page_token", "is not a token this service issued");
            None
        });
        if cursor
            .as_ref()
            .is_some_and(|c| c.pk != format!("wallet#{owner}"))
        {
            v.add("page_token", "belongs to another listing");
        }
        v.into_result()?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let (transactions, next) = self
            .wallets
            .transactions(&owner, &req.currency, size, cursor)
            .await?;
        Ok(Response::new(ListTransactionsResponse {
            transactions,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn charge(&self, request: Request<ChargeRequest>) -> Result<Response<Payment>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        check_id(&mut v, "user_id", &req.user_id);
        let order_ok = req
            .order
            .strip_prefix("orders/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        v.check(order_ok, "order", "must be orders/{id}");
        let amount = check_positive(&mut v, "amount", req.amount.as_ref());
        v.into_result()?;
        let Some((currency, minor)) = amount else {
            return Err(Status::invalid_argument("amount"));
        };
        let record = self
            .wallets
            .apply(Movement {
                kind: TransactionKind::Charge,
                fingerprint: ledger::fingerprint(&[
                    "charge",
                    &req.user_id,
                    &req.order,
                    &currency,
                    &minor.to_string(),
                ]),
                user_id: req.user_id.clone(),
                currency,
                delta: -minor,
                order: req.order,
                scope: req.user_id,
                idempotency_key: req.idempotency_key,
                refund_of: None,
            })
            .await?;
        record
            .payment
            .map(Response::new)
            .ok_or_else(|| Status::data_loss("charge without payment"))
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<Payment>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let pid = req
            .payment
            .strip_prefix("payments/")
            .unwrap_or_default()
            .to_string();
        check_id(&mut v, "payment", &pid);
        let requested = match &req.amount {
            Some(m) if m.amount_minor != 0 || !m.currency.is_empty() => {
                check_positive(&mut v, "amount", Some(m))
            }
            _ => None,
        };
        v.into_result()?;
        let (payment, _) = self
            .wallets
            .payment(&pid)
            .await?
            .ok_or_else(|| Status::not_found("payment not found"))?;
        let charged = payment.amount.clone().unwrap_or_default();
        let refunded = payment.refunded.as_ref().map_or(0, |r| r.amount_minor);
        // The request as asked ("all" when no amount), so a retry of "refund the rest" finds
        // its first result even though nothing is left to refund by then.
        let asked = match &requested {
            Some((c, m)) => format!("{c}:{m}"),
            None => "all".to_string(),
        };
        let (currency, minor) = match requested {
            Some((c, _)) if c != charged.currency => {
                return Err(crate::wallets::WalletError::CurrencyMismatch {
                    got: c,
                    want: charged.currency,
                }
                .into());
            }
            Some(cm) => cm,
            // No amount: whatever is left.
            None => (charged.currency.clone(), charged.amount_minor - refunded),
        };
        let record = self
            .wallets
            .apply(Movement {
                kind: TransactionKind::Refund,
                fingerprint: ledger::fingerprint(&["refund", &pid, &asked]),
                user_id: payment.user_id.clone(),
                currency,
                delta: minor,
                order: payment.order.clone(),
                scope: pid.clone(),
                idempotency_key: req.idempotency_key,
                refund_of: Some(pid),
            })
            .await?;
        record
            .payment
            .map(Response::new)
            .ok_or_else(|| Status::data_loss("refund without payment"))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let name = &request.get_ref().name;
        let pid = name.strip_prefix("payments/").unwrap_or_default();
        let mut v = Violations::new();
        check_id(&mut v, "name", pid);
        v.into_result()?;
        let (payment, _) = self
            .wallets
            .payment(pid)
            .await?
            .ok_or_else(|| Status::not_found("payment not found"))?;
        Ok(Response::new(payment))
    }
}
