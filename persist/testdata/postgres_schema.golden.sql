CREATE TABLE IF NOT EXISTS ad_impressions (
    impression_id VARCHAR(256) COLLATE "C" NOT NULL,
    user_id VARCHAR(256) COLLATE "C" NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    ad_creative_id VARCHAR(256) COLLATE "C",
    campaign_id VARCHAR(256) COLLATE "C",
    website VARCHAR(256) COLLATE "C",
    auction_id VARCHAR(256) COLLATE "C",
    bid_price DOUBLE PRECISION,
    floor_price DOUBLE PRECISION,
    bid_currency VARCHAR(256) COLLATE "C",
    exchange VARCHAR(256) COLLATE "C",
    targeting_criteria VARCHAR(65535) COLLATE "C",
    PRIMARY KEY (impression_id)
);

CREATE TABLE IF NOT EXISTS ad_clicks (
    click_id VARCHAR(256) COLLATE "C" NOT NULL,
    user_id VARCHAR(256) COLLATE "C" NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    ad_creative_id VARCHAR(256) COLLATE "C",
    campaign_id VARCHAR(256) COLLATE "C",
    impression_id VARCHAR(256) COLLATE "C",
    seconds_since_impression DOUBLE PRECISION,
    PRIMARY KEY (click_id)
);

CREATE TABLE IF NOT EXISTS conversion_attributions (
    conversion_id VARCHAR(256) COLLATE "C" NOT NULL,
    user_id VARCHAR(256) COLLATE "C" NOT NULL,
    model VARCHAR(32) COLLATE "C" NOT NULL,
    touch_type VARCHAR(16) COLLATE "C" NOT NULL,
    touch_id VARCHAR(256) COLLATE "C" NOT NULL,
    ad_creative_id VARCHAR(256) COLLATE "C",
    campaign_id VARCHAR(256) COLLATE "C",
    touch_time TIMESTAMPTZ,
    conversion_time TIMESTAMPTZ NOT NULL,
    conversion_type VARCHAR(256) COLLATE "C",
    value DOUBLE PRECISION NOT NULL,
    currency VARCHAR(256) COLLATE "C",
    credit DOUBLE PRECISION NOT NULL,
    credited_value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (conversion_id, model, touch_type, touch_id)
);
