CREATE TABLE IF NOT EXISTS ad_impressions (
    impression_id VARCHAR(256) NOT NULL,
    user_id VARCHAR(256) NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    ad_creative_id VARCHAR(256),
    campaign_id VARCHAR(256),
    website VARCHAR(256),
    auction_id VARCHAR(256),
    bid_price DOUBLE PRECISION,
    floor_price DOUBLE PRECISION,
    bid_currency VARCHAR(256),
    exchange VARCHAR(256),
    targeting_criteria VARCHAR(65535),
    PRIMARY KEY (impression_id)
)
DISTSTYLE KEY DISTKEY (user_id) COMPOUND SORTKEY (event_time, user_id);

CREATE TABLE IF NOT EXISTS ad_clicks (
    click_id VARCHAR(256) NOT NULL,
    user_id VARCHAR(256) NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    ad_creative_id VARCHAR(256),
    campaign_id VARCHAR(256),
    impression_id VARCHAR(256),
    seconds_since_impression DOUBLE PRECISION,
    PRIMARY KEY (click_id)
)
DISTSTYLE KEY DISTKEY (user_id) COMPOUND SORTKEY (event_time, user_id);

CREATE TABLE IF NOT EXISTS conversion_attributions (
    conversion_id VARCHAR(256) NOT NULL,
    user_id VARCHAR(256) NOT NULL,
    model VARCHAR(32) NOT NULL,
    touch_type VARCHAR(16) NOT NULL,
    touch_id VARCHAR(256) NOT NULL,
    ad_creative_id VARCHAR(256),
    campaign_id VARCHAR(256),
    touch_time TIMESTAMPTZ,
    conversion_time TIMESTAMPTZ NOT NULL,
    conversion_type VARCHAR(256),
    value DOUBLE PRECISION NOT NULL,
    currency VARCHAR(256),
    credit DOUBLE PRECISION NOT NULL,
    credited_value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (conversion_id, model, touch_type, touch_id)
)
DISTSTYLE KEY DISTKEY (user_id) COMPOUND SORTKEY (conversion_time, user_id);
