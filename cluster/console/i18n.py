"""The console's two languages, English and Japanese, chosen by the browser's Accept-Language.

Labels are looked up by key; every key exists in both languages (a unit test holds them to
it), so a page is never half translated. Kairos's own codes on a page (a dropped action's reason,
a history outcome) are labelled too, by `term`; one without a label (a newer shard's) is shown
as it is. Values from profiles and catalogs (ids, attribute names, agent texts) are shown as
they are.
"""
from __future__ import annotations

LANGUAGES = ("en", "ja")
DEFAULT = "en"
MAX_HEADER = 1_000  # an Accept-Language longer than this is not a browser's: use the default

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Kairos agent console",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "api_key": "API key",
        "sign_in_help": "Sign in with your agent key.",
        "sign_in_refused": "Sign-in refused",
        "search": "Find a customer",
        "search_by": "Search by",
        "customer_id": "Customer id",
        "cookie": "Cookie",
        "device": "Device",
        "email": "E-mail",
        "find": "Find",
        "operator": "Operator",
        "customer": "Customer",
        "attributes": "Attributes",
        "consent": "Consent by purpose",
        "granted": "granted",
        "withheld": "withheld",
        "features": "Features",
        "model_inputs": "What the models read",
        "history": "Recent history",
        "no_history": "No interactions yet.",
        "time": "Time",
        "channel": "Channel",
        "action": "Action",
        "outcome": "Outcome",
        "next_best": "Next best actions",
        "for_channel": "for the channel",
        "nothing_now": "Nothing to offer now: better no message than a bad one.",
        "why": "Why it won",
        "priority": "Priority",
        "propensity": "Propensity",
        "context_weight": "Context weight",
        "value": "Value",
        "lever": "Lever",
        "accept": "Accept",
        "reject": "Reject",
        "not_now": "Not now",
        "dropped": "Dropped actions",
        "reason": "Reason",
        "detail": "Detail",
        "other_channels": "Best action on the other channels",
        "none": "none",
        "fallback_tag": "fallback",
        "fallback": "Fallback decision: the customer's shard did not answer in time. These "
                    "are the catalog's defaults, and outcomes cannot be recorded for them.",
        "unread": "The customer's record could not be read in time: only the channel's decision "
                  "is shown. Reload the page to try again.",
        "live": "Live: the page updates as events arrive.",
        "live_lost": "Live updates stopped; reload the page.",
        "live_paused": "Live updates paused: too many live pages are open. Close some tabs; "
                       "this page updates again when it can.",
        "live_paused_key": "Live updates paused: your key has too many live pages open, in "
                           "this browser and others. Close some; this page updates again "
                           "when it can.",
        "live_paused_console": "Live updates paused: the console follows as many live pages "
                               "as it can. This page updates again when it can.",
        "live_paused_host": "Live updates paused: the console holds as many watches as the "
                            "gateway serves one host (KAIROS_WATCH_STREAMS_PER_HOST; a live "
                            "page holds one per channel). This page tries again in a few "
                            "seconds.",
        "live_paused_busy": "Live updates paused: Kairos is busy. This page tries again in a "
                            "few seconds.",
        "live_paused_down": "Live updates paused: Kairos is not answering. This page tries "
                            "again shortly, then less often.",
        "recorded": "Outcome recorded",
        "answered_earlier": "An answer to this action was recorded earlier, and it stands: "
                            "see the customer's history",
        "sending": "Sending the outcome…",
        "unknown_customer": "No customer is known by",
        "gateway_down": "Kairos does not answer (its gateway, or the customer's shard)",
        "denied": "Your key may not do this",
        "invalid": "The gateway refused the request",
        "failed": "The gateway failed the request",
        "busy": "Kairos is busy: try again in a few seconds",
        "maybe_recorded": "Kairos did not confirm the outcome in time: it may already be "
                          "recorded. Check the customer's history before answering again.",
        "check_history": "Open the customer's page",
        "gateway_said": "The gateway said:",
        "id_length": "1 to {} characters",
        "catalog_yaml": "The catalog's YAML",
        "bad_request": "Bad request",
        "csrf": "The form's security token is missing or stale: reload the page and try again.",
        "too_many_signins": "Too many failed sign-ins from your address: wait a few minutes, "
                            "then try again.",
        "not_found": "Not found",
        "cluster": "Cluster",
        "nodes": "Nodes",
        "node": "Node",
        "address": "Address",
        "gateway": "Gateway",
        "serving": "serving",
        "not_serving": "not serving",
        "draining": "draining",
        "shards": "Shards",
        "shard": "Shard",
        "partitions": "Partitions",
        "resident": "Resident customers",
        "passivated": "Passivated",
        "queued": "Queued",
        "available": "Available",
        "catalog_version": "Catalog version",
        "model_version": "Model version",
        "map_version": "Map version",
        "catalog": "Catalog",
        "catalog_valid": "The running catalog is valid",
        "validate": "Validate a catalog",
        "validate_help": "Paste a catalog's YAML: the gateway checks it without switching to it.",
        "validation": "Validation",
        "ray_dashboard": "Ray dashboard",
        "yes": "yes",
        "no": "no",
        "actions": "actions",
        "channels": "channels",
        "event_types": "event types",
        # why an action was dropped: the kernel's reason codes (core.compiler.Reason)
        "reason.NOT_IN_CHANNEL": "Not offered on this channel",
        "reason.OUTSIDE_VALIDITY": "Outside its validity window",
        "reason.NO_CONSENT": "No consent",
        "reason.ELIGIBILITY": "Not eligible",
        "reason.APPLICABILITY": "Not applicable",
        "reason.SUITABILITY": "Not suitable",
        "reason.IMPRESSION_CAP": "Impression cap reached",
        "reason.REJECT_SUPPRESSION": "Suppressed after rejections",
        "reason.ACCEPT_COOLDOWN": "Recently accepted",
        "reason.INVALID_VALUE": "Value not a finite number",
        "reason.RESTRAINT": "Below the restraint threshold, or a priority of 0",
        "reason.GROUP_LIMIT": "Another of its group was chosen",
        "reason.TOP_K": "Ranked below those shown",
        # a history entry's outcome: core.compiler.Outcome's names, lower-cased
        "outcome.impression": "Shown",
        "outcome.accept": "Accepted",
        "outcome.reject": "Rejected",
        "outcome.ignore": "Not now",
        "outcome.convert": "Converted",
    },
    "ja": {
        "title": "Kairos エージェントコンソール",
        "sign_in": "サインイン",
        "sign_out": "サインアウト",
        "api_key": "API キー",
        "sign_in_help": "エージェントキーでサインインしてください。",
        "sign_in_refused": "サインインできません",
        "search": "顧客を検索",
        "search_by": "検索条件",
        "customer_id": "顧客 ID",
        "cookie": "Cookie",
        "device": "デバイス",
        "email": "メールアドレス",
        "find": "検索",
        "operator": "オペレーター",
        "customer": "顧客",
        "attributes": "属性",
        "consent": "目的別の同意",
        "granted": "同意あり",
        "withheld": "同意なし",
        "features": "特徴量",
        "model_inputs": "モデルが読む項目",
        "history": "最近の履歴",
        "no_history": "まだやり取りはありません。",
        "time": "日時",
        "channel": "チャネル",
        "action": "アクション",
        "outcome": "結果",
        "next_best": "ネクスト・ベスト・アクション",
        "for_channel": "チャネル",
        "nothing_now": "今は提案なし：不適切な提案よりは何もしないほうがよい。",
        "why": "選ばれた理由",
        "priority": "優先度",
        "propensity": "反応確率",
        "context_weight": "文脈の重み",
        "value": "価値",
        "lever": "レバー",
        "accept": "承諾",
        "reject": "拒否",
        "not_now": "今はしない",
        "dropped": "除外されたアクション",
        "reason": "理由",
        "detail": "詳細",
        "other_channels": "他のチャネルの最善アクション",
        "none": "なし",
        "fallback_tag": "フォールバック",
        "fallback": "フォールバックの判断：顧客のシャードが時間内に応答しませんでした。"
                    "カタログの既定値であり、結果は記録できません。",
        "unread": "顧客の記録を時間内に読み取れませんでした。チャネルの判断のみを表示しています。"
                  "ページを再読み込みしてください。",
        "live": "ライブ：イベントが届くとページが更新されます。",
        "live_lost": "ライブ更新が止まりました。ページを再読み込みしてください。",
        "live_paused": "ライブ更新を一時停止中：開いているライブページが多すぎます。タブをいくつか"
                       "閉じてください。更新できるようになると再開します。",
        "live_paused_key": "ライブ更新を一時停止中：このキーで開いているライブページ（他のブラウザーを"
                           "含む）が多すぎます。いくつか閉じてください。更新できるようになると"
                           "再開します。",
        "live_paused_console": "ライブ更新を一時停止中：コンソールが追跡できるライブページの上限に"
                               "達しています。更新できるようになると再開します。",
        "live_paused_host": "ライブ更新を一時停止中：コンソールの監視数が、ゲートウェイが 1 ホストに"
                            "許す上限（KAIROS_WATCH_STREAMS_PER_HOST。ライブページはチャネルごとに"
                            "1 つ使います）に達しています。数秒後に再試行します。",
        "live_paused_busy": "ライブ更新を一時停止中：Kairos が混み合っています。数秒後に再試行します。",
        "live_paused_down": "ライブ更新を一時停止中：Kairos が応答していません。まもなく再試行し、その後は間隔を空けて再試行します。",
        "recorded": "結果を記録しました",
        "answered_earlier": "このアクションへの回答は以前に記録済みで、その回答が有効です。"
                            "顧客の履歴を確認してください",
        "sending": "結果を送信中…",
        "unknown_customer": "該当する顧客がいません：",
        "gateway_down": "Kairos が応答しません（ゲートウェイまたは顧客のシャード）",
        "denied": "このキーでは実行できません",
        "invalid": "ゲートウェイがリクエストを拒否しました",
        "failed": "ゲートウェイでエラーが発生しました",
        "busy": "Kairos が混み合っています。数秒後にもう一度お試しください",
        "maybe_recorded": "Kairos から結果の記録の確認が時間内に届きませんでした。すでに記録されている"
                          "可能性があります。もう一度回答する前に顧客の履歴を確認してください。",
        "check_history": "顧客のページを開く",
        "gateway_said": "ゲートウェイからのメッセージ（英語）：",
        "id_length": "1〜{} 文字",
        "catalog_yaml": "カタログの YAML",
        "bad_request": "不正なリクエスト",
        "csrf": "フォームのセキュリティトークンがないか古くなっています。ページを再読み込みしてください。",
        "too_many_signins": "このアドレスからのサインインの失敗が多すぎます。数分待ってから、"
                            "もう一度お試しください。",
        "not_found": "見つかりません",
        "cluster": "クラスター",
        "nodes": "ノード",
        "node": "ノード",
        "address": "アドレス",
        "gateway": "ゲートウェイ",
        "serving": "稼働中",
        "not_serving": "停止中",
        "draining": "退避中",
        "shards": "シャード",
        "shard": "シャード",
        "partitions": "パーティション",
        "resident": "メモリ上の顧客",
        "passivated": "退避済み",
        "queued": "待ち行列",
        "available": "利用可能",
        "catalog_version": "カタログのバージョン",
        "model_version": "モデルのバージョン",
        "map_version": "マップのバージョン",
        "catalog": "カタログ",
        "catalog_valid": "稼働中のカタログは有効です",
        "validate": "カタログを検証",
        "validate_help": "カタログの YAML を貼り付けてください。切り替えずに検証します。",
        "validation": "検証結果",
        "ray_dashboard": "Ray ダッシュボード",
        "yes": "はい",
        "no": "いいえ",
        "actions": "アクション",
        "channels": "チャネル",
        "event_types": "イベント種別",
        "reason.NOT_IN_CHANNEL": "このチャネルでは提供されない",
        "reason.OUTSIDE_VALIDITY": "有効期間外",
        "reason.NO_CONSENT": "同意が得られていない",
        "reason.ELIGIBILITY": "対象条件を満たさない",
        "reason.APPLICABILITY": "適用条件を満たさない",
        "reason.SUITABILITY": "適合条件を満たさない",
        "reason.IMPRESSION_CAP": "表示回数の上限に到達",
        "reason.REJECT_SUPPRESSION": "拒否が続いたため抑止中",
        "reason.ACCEPT_COOLDOWN": "最近承諾済み",
        "reason.INVALID_VALUE": "価値が有限の数値でない",
        "reason.RESTRAINT": "抑制しきい値未満、または優先度 0",
        "reason.GROUP_LIMIT": "同じグループの別のアクションを選択",
        "reason.TOP_K": "表示枠より下位",
        "outcome.impression": "表示",
        "outcome.accept": "承諾",
        "outcome.reject": "拒否",
        "outcome.ignore": "今はしない",
        "outcome.convert": "コンバージョン",
    },
}


def language(accept_language: str | None) -> str:
    """The language of LANGUAGES the browser prefers most (its q-values, then its order),
    else DEFAULT."""
    if not accept_language or len(accept_language) > MAX_HEADER:
        return DEFAULT
    best, best_q = DEFAULT, 0.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        # an earlier tag wins a tie: browsers list languages in the user's order
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


def labels(lang: str) -> dict[str, str]:
    return LABELS.get(lang, LABELS[DEFAULT])


def term(t: dict[str, str], kind: str, code: str) -> str:
    """The label of one of Kairos's codes on a page (`kind` "reason" or "outcome"); a code
    without one is shown as it is: a shard newer than the console may send it."""
    return t.get(f"{kind}.{code}", code)
